//! The LEGO figures of `attnlab figures` ([`registered`]), drawn with [`crate::plot`] from the
//! runs of the experiment files under `experiments/lego/`.
//!
//! Each figure trains (or reloads) the runs of its experiment file under
//! `<runs>/lego/<out_dir name>/<preset>/`; a run asked for by several studies (the plain
//! `bert-random` model serves studies 1, 3, 5 and 6) is trained once. Lines are means over
//! seeds, bands min..max over seeds.
//!
//! | figure | config | panels |
//! |---|---|---|
//! | `lego/per_position` | `length_extrapolation.toml` | accuracy per chain position, BERT vs ALBERT |
//! | `lego/training_curves` | `length_extrapolation.toml` | supervised / extrapolated accuracy over steps |
//! | `lego/mimicking` | `mimicking.toml` | per position, random vs mimicking init; mimicking loss |
//! | `lego/head_scores` | `head_analysis.toml` | heatmaps (stage and layer x head) of association and locality |
//! | `lego/text_pretraining` | `length_extrapolation.toml` | masked-LM loss; per position, text-pretrained vs random vs fixed heads; head-score heatmaps |
//! | `lego/shortcuts` | `shortcuts.toml` | grouped bars: accuracy per test variant and regime; per position |
//! | `lego/attention_flops` | `lego_attention.toml` | accuracy vs exact forward FLOPs; per position |
//! | `lego/convolution` | `convolution.toml` | program accuracy over training; LEGO per position |

use crate::lego::charts::{
    color, curves_chart, labels, mean, of_label, per_position_chart, per_position_summary, round3,
    uniform_scores, GREY,
};
use crate::lego::config::{self, LegoExperiment};
use crate::lego::experiments::{run_experiment, ExperimentOpts, ExperimentResults, PLAIN_LEGO};
use crate::lego::train::RunResult;
use crate::lego::variants::Variant;
use crate::plot::figure::{Figure, FigureContext, FigureOutput};
use crate::plot::{bar_chart, heatmap_chart, Chart, Corner, Mark, Series};
use anyhow::{Context, Result};
use serde_json::json;
use std::path::Path;

/// The LEGO figures (see the module table).
pub fn registered() -> Vec<Figure> {
    let check = |p: &Path| config::load(p).map(|_| ());
    vec![
        Figure {
            name: "lego/per_position",
            what: "LEGO test accuracy per chain position (first positions supervised, the rest extrapolated): BERT-like vs ALBERT-like from random init.",
            compute: per_position,
            config: Some("lego/length_extrapolation.toml"),
            check,
        },
        Figure {
            name: "lego/training_curves",
            what: "LEGO test accuracy over training on the supervised (solid) and extrapolated (dashed) chain positions, BERT-like vs ALBERT-like.",
            compute: training_curves,
            config: Some("lego/length_extrapolation.toml"),
            check,
        },
        Figure {
            name: "lego/mimicking",
            what: "Mimicking pretraining as initialisation: accuracy per chain position for random vs mimicking init (BERT-/ALBERT-like), and the mimicking loss.",
            compute: mimicking,
            config: Some("lego/mimicking.toml"),
            check,
        },
        Figure {
            name: "lego/head_scores",
            what: "Association and window-locality score of every layer/head at init, after mimicking and after LEGO training, beside uniform attention.",
            compute: head_scores,
            config: Some("lego/head_analysis.toml"),
            check,
        },
        Figure {
            name: "lego/text_pretraining",
            what: "Masked-LM pretraining on English text as initialisation (study 2): the pretraining loss, LEGO accuracy per chain position against random init and fixed heads, and the head scores before and after pretraining and after LEGO training.",
            compute: text_pretraining,
            config: Some("lego/length_extrapolation.toml"),
            check,
        },
        Figure {
            name: "lego/shortcuts",
            what: "Shortcut robustness: mean accuracy of each training regime on each test variant, and per chain position on shuffled sentences.",
            compute: shortcuts,
            config: Some("lego/shortcuts.toml"),
            check,
        },
        Figure {
            name: "lego/attention_flops",
            what: "LEGO attention module: supervised-position accuracy against exact forward FLOPs per sentence as heads become fixed local/association maps.",
            compute: attention_flops,
            config: Some("lego/lego_attention.toml"),
            check,
        },
        Figure {
            name: "lego/convolution",
            what: "Convolutional vs plain q/k/v maps: program-execution accuracy over training (with the majority baseline) and LEGO accuracy per chain position.",
            compute: convolution,
            config: Some("lego/convolution.toml"),
            check,
        },
    ]
}

/// Loads the figure's experiment file and trains or reloads its runs.
fn results(ctx: &FigureContext) -> Result<(LegoExperiment, ExperimentResults)> {
    let exp = config::load(ctx.config)?;
    let group = Path::new(&exp.experiment.out_dir)
        .file_name()
        .context("experiment.out_dir has no last component")?;
    let dir = ctx.runs.join("lego").join(group);
    // the CPU preset's per-run results are committed beside the figures (figures/lego/runs/)
    let committed = (ctx.preset == crate::config::Preset::Cpu)
        .then(|| committed_runs(ctx.config).map(|c| c.join(group)))
        .flatten();
    let quiet = ctx.quiet;
    let dev = crate::nn::device()?;
    let res = run_experiment(
        &exp,
        ctx.preset,
        ExperimentOpts {
            seeds: None,
            only: None,
            dir: &dir,
            committed: committed.as_deref(),
            stop: &crate::interrupt::requested,
            log: &mut |m| {
                if !quiet {
                    eprintln!("  {m}")
                }
            },
            verbose: !quiet,
            dev: &dev,
        },
    )?;
    Ok((exp, res))
}

/// `<repository>/figures/lego/runs` for a config `<repository>/experiments/lego/<file>`.
pub fn committed_runs(config: &Path) -> Option<std::path::PathBuf> {
    let repo = config.parent()?.parent()?.parent()?;
    Some(repo.join("figures").join("lego").join("runs"))
}

fn per_position(ctx: &FigureContext) -> Result<FigureOutput> {
    let (_, r) = results(ctx)?;
    Ok(FigureOutput {
        charts: vec![per_position_chart(
            "LEGO length extrapolation",
            &r.results,
            r.train_vars,
            &|l| l.to_string(),
        )],
        summary: json!({ "train_vars": r.train_vars, "runs": per_position_summary(&r.results) }),
    })
}

fn training_curves(ctx: &FigureContext) -> Result<FigureOutput> {
    let (_, r) = results(ctx)?;
    let mut summary = serde_json::Map::new();
    for l in labels(&r.results) {
        let xs = of_label(&r.results, &l);
        let last = |f: fn(&crate::lego::train::CurvePoint) -> f64| {
            round3(mean(
                &xs.iter()
                    .filter_map(|x| x.curve.last().map(f))
                    .collect::<Vec<_>>(),
            ))
        };
        summary.insert(
            l.clone(),
            json!({
                "final_supervised": last(|p| p.acc_supervised),
                "final_extrapolated": last(|p| p.acc_extrapolated),
                "steps": xs[0].curve.last().map(|p| p.step),
            }),
        );
    }
    Ok(FigureOutput {
        charts: vec![curves_chart("LEGO accuracy over training", &r.results)],
        summary: serde_json::Value::Object(summary),
    })
}

fn mimicking(ctx: &FigureContext) -> Result<FigureOutput> {
    let (_, r) = results(ctx)?;
    let mut loss = Chart {
        title: "mimicking loss (sum over layers, 2 heads)".into(),
        x_label: "mimicking step".into(),
        y_label: "KL(attention || target)".into(),
        y_log: true,
        legend: Corner::UpperRight,
        ..Default::default()
    };
    let mut summary = serde_json::Map::new();
    for (i, l) in labels(&r.results).iter().enumerate() {
        let xs = of_label(&r.results, l);
        let losses: Vec<Vec<f64>> = xs
            .iter()
            .map(|x| x.mimic_losses.clone())
            .filter(|v| !v.is_empty())
            .collect();
        let n = losses.iter().map(Vec::len).min().unwrap_or(0);
        if n > 0 {
            let cut: Vec<Vec<f64>> = losses.iter().map(|v| v[..n].to_vec()).collect();
            loss.series.push(Series::over_runs(
                l.clone(),
                Mark::Line,
                color(i),
                (1..=n).map(|s| s as f64).collect(),
                &cut,
            ));
            summary.insert(
                format!("{l} mimic loss first/last"),
                json!([
                    round3(mean(&cut.iter().map(|v| v[0]).collect::<Vec<_>>())),
                    round3(mean(&cut.iter().map(|v| v[n - 1]).collect::<Vec<_>>()))
                ]),
            );
        }
    }
    summary.insert("runs".into(), per_position_summary(&r.results));
    let mut charts = vec![per_position_chart(
        "random vs mimicking init vs fixed local + association heads",
        &r.results,
        r.train_vars,
        &|l| l.to_string(),
    )];
    if !loss.series.is_empty() {
        charts.push(loss);
    }
    Ok(FigureOutput {
        charts,
        summary: serde_json::Value::Object(summary),
    })
}

fn head_scores(ctx: &FigureContext) -> Result<FigureOutput> {
    let (exp, r) = results(ctx)?;
    let preset = exp.preset(ctx.preset);
    let n_var = preset.task.as_ref().map(|t| t.n_var).context("no task")?;
    let (heads, layers) = (preset.model.heads, preset.model.layers);
    let (ua, uw) = uniform_scores(n_var, 20)?;
    let mut stages = Vec::new();
    let mut summary = serde_json::Map::new();
    let mut seeds = 0;
    for (i, l) in labels(&r.results).iter().enumerate() {
        let xs = of_label(&r.results, l);
        for stage in ["init", "mimicked", "trained"] {
            // init maps are the same random-init story for every model: draw them once
            if stage == "init" && i > 0 {
                continue;
            }
            let name = if stage == "init" {
                "random init".to_string()
            } else {
                format!("{l} {stage}")
            };
            if let Some((sh, n)) = stage_heads(&xs, stage, &name, layers * heads) {
                seeds = seeds.max(n);
                summary.insert(name, first_seed_scores(&xs, stage));
                stages.push(sh);
            }
        }
    }
    summary.insert(
        "uniform".into(),
        json!({ "association": round3(ua), "window_locality": round3(uw) }),
    );
    Ok(FigureOutput {
        charts: head_score_heatmaps(&stages, layers, heads, (ua, uw), seeds)?,
        summary: serde_json::Value::Object(summary),
    })
}

/// (association, window locality) of every head at `stage`, per seed that has all `n` heads.
fn stage_scores(xs: &[&RunResult], stage: &str, n: usize) -> Vec<Vec<[f64; 2]>> {
    xs.iter()
        .filter_map(|x| x.head_scores.iter().find(|s| s.stage == stage))
        .map(|s| {
            s.scores
                .iter()
                .flatten()
                .map(|h| {
                    [
                        h.association.unwrap_or(f64::NAN),
                        h.window_locality.unwrap_or(f64::NAN),
                    ]
                })
                .collect()
        })
        .filter(|v: &Vec<[f64; 2]>| v.len() == n)
        .collect()
}

/// The heatmap rows of `stage` as `name`, means over the seeds, and how many seeds.
fn stage_heads(
    xs: &[&RunResult],
    stage: &str,
    name: &str,
    n: usize,
) -> Option<(StageHeads, usize)> {
    let per_seed = stage_scores(xs, stage, n);
    if per_seed.is_empty() {
        return None;
    }
    let over_seeds = |k: usize| -> Vec<f64> {
        (0..n)
            .map(|h| mean(&per_seed.iter().map(|v| v[h][k]).collect::<Vec<_>>()))
            .collect()
    };
    Some((
        StageHeads {
            name: name.to_string(),
            association: over_seeds(0),
            window_locality: over_seeds(1),
        },
        per_seed.len(),
    ))
}

/// The first seed's scores at `stage` (layer-major), as the claims ledger reads them.
fn first_seed_scores(xs: &[&RunResult], stage: &str) -> serde_json::Value {
    let n = xs
        .first()
        .and_then(|x| x.head_scores.first())
        .map(|s| s.scores.iter().flatten().count())
        .unwrap_or(0);
    let v = stage_scores(xs, stage, n);
    let first = v.first().cloned().unwrap_or_default();
    json!({
        "association": first.iter().map(|p| round3(p[0])).collect::<Vec<_>>(),
        "window_locality": first.iter().map(|p| round3(p[1])).collect::<Vec<_>>(),
    })
}

/// Study 2: masked-LM pretraining on English text as initialisation, beside random init and
/// the fixed-head model of the same depth: the pretraining loss, accuracy per chain position,
/// and the head scores the pretraining produced (and what LEGO training made of them).
fn text_pretraining(ctx: &FigureContext) -> Result<FigureOutput> {
    let (exp, r) = results(ctx)?;
    let preset = exp.preset(ctx.preset);
    let n_var = preset.task.as_ref().map(|t| t.n_var).context("no task")?;
    let (heads, layers) = (preset.model.heads, preset.model.layers);
    let text_labels: Vec<String> = exp
        .runs
        .iter()
        .filter(|s| s.init == config::Init::Text)
        .map(|s| s.label.clone())
        .collect();
    anyhow::ensure!(
        !text_labels.is_empty(),
        "no run with init = \"text\" in {}",
        ctx.config.display()
    );
    let compared: Vec<RunResult> = r
        .results
        .iter()
        .filter(|x| {
            text_labels.contains(&x.run.label)
                || ["bert-random", "bert-fixed"].contains(&x.run.label.as_str())
        })
        .cloned()
        .collect();
    let mut loss = Chart {
        title: "Masked-LM pretraining on English text (Debian `fortunes`)".into(),
        x_label: "pretraining step".into(),
        y_label: "masked-LM loss (mean of 50 steps)".into(),
        legend: Corner::UpperRight,
        ..Default::default()
    };
    let (ua, uw) = uniform_scores(n_var, 20)?;
    let mut stages = Vec::new();
    let mut seeds = 0;
    let mut summary = serde_json::Map::new();
    let mut text_maps = Vec::new();
    for (i, l) in text_labels.iter().enumerate() {
        let xs = of_label(&r.results, l);
        let smooth: Vec<Vec<f64>> = xs
            .iter()
            .map(|x| x.pretrain_losses.chunks(50).map(mean).collect())
            .collect();
        let len = smooth.iter().map(Vec::len).min().unwrap_or(0);
        let smooth: Vec<Vec<f64>> = smooth.into_iter().map(|v| v[..len].to_vec()).collect();
        let x: Vec<f64> = (0..len).map(|k| (50 * k + 25) as f64).collect();
        loss.series.push(Series::over_runs(
            l.clone(),
            Mark::Line,
            color(i),
            x,
            &smooth,
        ));
        for (stage, what) in [
            ("init", "random init"),
            ("pretrained", "pretrained"),
            ("trained", "after LEGO"),
        ] {
            let name = format!("{l} {what}");
            if let Some((sh, n)) = stage_heads(&xs, stage, &name, layers * heads) {
                seeds = seeds.max(n);
                stages.push(sh);
            }
        }
        let pre: Vec<&crate::lego::train::PretrainSummary> =
            xs.iter().filter_map(|x| x.pretrain.as_ref()).collect();
        let acc: Vec<f64> = pre.iter().map(|p| round3(p.held_out_accuracy)).collect();
        let known: Vec<f64> = pre
            .iter()
            .map(|p| round3(p.held_out_accuracy_known))
            .collect();
        let text_best: Vec<f64> = pre
            .iter()
            .map(|p| {
                round3(
                    p.text_association
                        .iter()
                        .flatten()
                        .fold(0.0, |a, &b| f64::max(a, b)),
                )
            })
            .collect();
        let text_uniform = mean(
            &pre.iter()
                .map(|p| p.text_association_uniform)
                .collect::<Vec<_>>(),
        );
        if !pre.is_empty() {
            // layer x head, mean over seeds
            let rows = (0..layers)
                .map(|li| {
                    let v = (0..heads)
                        .map(|hi| {
                            mean(
                                &pre.iter()
                                    .filter_map(|p| p.text_association.get(li)?.get(hi).copied())
                                    .collect::<Vec<_>>(),
                            )
                        })
                        .collect();
                    (format!("{l} L{}", li + 1), v)
                })
                .collect();
            text_maps.push(heatmap_chart(
                format!(
                    "association score on held-out text after pretraining, mean of {} seeds",
                    pre.len()
                ),
                "head",
                "mass on other occurrences of the word",
                rows,
                vec![("uniform attention".into(), text_uniform)],
            ));
        }
        let scores = |stage: &str| -> serde_json::Value {
            let v = stage_scores(&xs, stage, layers * heads);
            let best = |k: usize| -> Vec<f64> {
                v.iter()
                    .map(|s| round3(s.iter().map(|p| p[k]).fold(0.0, f64::max)))
                    .collect()
            };
            json!({ "best_association": best(0), "best_window_locality": best(1) })
        };
        summary.insert(
            l.clone(),
            json!({
                "seeds": xs.len(),
                "held_out_masked_accuracy": acc,
                "held_out_masked_accuracy_known_words": known,
                "corpus_tokens": pre.first().map(|p| p.corpus_tokens),
                "vocab_size": pre.first().map(|p| p.vocab_size),
                "unk_rate": pre.first().map(|p| round3(p.unk_rate)),
                "text_best_association": text_best,
                "text_association_uniform": round3(text_uniform),
                "final_pretrain_loss": xs.iter().map(|x| {
                    let n = x.pretrain_losses.len();
                    round3(mean(&x.pretrain_losses[n.saturating_sub(50)..]))
                }).collect::<Vec<_>>(),
                "init": scores("init"),
                "pretrained": scores("pretrained"),
                "trained": scores("trained"),
            }),
        );
    }
    summary.insert("runs".into(), per_position_summary(&compared));
    summary.insert(
        "uniform".into(),
        json!({ "association": round3(ua), "window_locality": round3(uw) }),
    );
    let mut charts = vec![
        loss,
        per_position_chart(
            "LEGO after text pretraining vs random init and fixed heads",
            &compared,
            r.train_vars,
            &|l| l.to_string(),
        ),
    ];
    charts.extend(head_score_heatmaps(
        &stages,
        layers,
        heads,
        (ua, uw),
        seeds,
    )?);
    charts.extend(text_maps);
    Ok(FigureOutput {
        charts,
        summary: serde_json::Value::Object(summary),
    })
}

/// One block of heatmap rows: a model at one stage.
#[derive(Clone, Debug, PartialEq)]
pub struct StageHeads {
    pub name: String,
    pub association: Vec<f64>,
    pub window_locality: Vec<f64>,
}

/// The head-score figure: one heatmap per score, rows = (stage, layer), columns = heads, on the
/// scale [0, 1] with uniform attention's score `uniform = (association, locality)` marked.
pub fn head_score_heatmaps(
    stages: &[StageHeads],
    layers: usize,
    heads: usize,
    uniform: (f64, f64),
    seeds: usize,
) -> Result<Vec<Chart>> {
    for s in stages {
        for (what, v) in [
            ("association", &s.association),
            ("window_locality", &s.window_locality),
        ] {
            anyhow::ensure!(
                v.len() == layers * heads,
                "stage `{}` has {} {what} scores for {layers} layers x {heads} heads",
                s.name,
                v.len()
            );
        }
    }
    let seeds = if seeds > 1 {
        format!(", mean of {seeds} seeds")
    } else {
        String::new()
    };
    let panel = |title: &str, scale: &str, uni: f64, pick: fn(&StageHeads) -> &Vec<f64>| {
        let rows = stages
            .iter()
            .flat_map(|s| {
                pick(s)
                    .chunks(heads)
                    .enumerate()
                    .map(|(l, v)| (format!("{} L{}", s.name, l + 1), v.to_vec()))
            })
            .collect();
        heatmap_chart(
            format!("{title}{seeds}"),
            "head",
            scale,
            rows,
            vec![("uniform attention".into(), uni)],
        )
    };
    Ok(vec![
        panel(
            "association score",
            "mass on other occurrences",
            uniform.0,
            |s| &s.association,
        ),
        panel("window locality score", "mass within +-2", uniform.1, |s| {
            &s.window_locality
        }),
    ])
}

/// Grouped bars from a line chart whose series are plotted at x = 1..=groups.len(): one bar
/// per solid series in each group (its band as the error bar), dashed series as references.
pub fn grouped_bars(line: &Chart, groups: Vec<String>, x_label: &str, seeds: usize) -> Chart {
    let n = groups.len();
    let mut bars = Vec::new();
    let mut references = Vec::new();
    for s in &line.series {
        if s.mark == Mark::Dashed {
            if let Some(y) = s.y.first() {
                references.push((s.label.clone(), *y));
            }
            continue;
        }
        let at = |v: &[f64]| -> Vec<f64> {
            (1..=n)
                .map(|g| {
                    s.x.iter()
                        .position(|&x| x == g as f64)
                        .map_or(f64::NAN, |i| v[i])
                })
                .collect()
        };
        let spread = s.band.as_ref().map(|(lo, hi)| (at(lo), at(hi)));
        bars.push((s.label.clone(), s.color, at(&s.y), spread));
    }
    let spread = if seeds > 1 {
        format!(", mean; bars min-max of {seeds} seeds")
    } else {
        ", 1 seed".to_string()
    };
    bar_chart(
        format!("{}{spread}", line.title),
        x_label,
        &line.y_label,
        &groups,
        bars,
        references,
    )
}

/// The new form of a LEGO figure stored before it drew heatmaps and bars, from its stored line
/// panels (means over seeds, bands min..max), for `attnlab figures --replot`: `None` when the
/// figure is not one that changed form or is already in it. `layers` and `heads` size the head
/// grid; `variants` names the shortcut study's test variants in plotting order.
pub fn restyle(
    figure: &str,
    charts: &[Chart],
    layers: usize,
    heads: usize,
    variants: &[String],
    seeds: usize,
) -> Result<Option<Vec<Chart>>> {
    let lines = charts
        .iter()
        .flat_map(|c| &c.series)
        .all(|s| !matches!(s.mark, Mark::Cell | Mark::Bar));
    match figure {
        "lego/head_scores" if lines => {
            let panel = |t: &str| {
                charts
                    .iter()
                    .find(|c| c.title.starts_with(t))
                    .with_context(|| format!("no `{t}` panel"))
            };
            let (a, w) = (panel("association score")?, panel("window locality score")?);
            let uni = |c: &Chart| {
                c.series
                    .iter()
                    .find(|s| s.mark == Mark::Dashed)
                    .and_then(|s| s.y.first().copied())
                    .unwrap_or(f64::NAN)
            };
            let stages: Vec<StageHeads> = a
                .series
                .iter()
                .filter(|s| s.mark != Mark::Dashed)
                .map(|s| -> Result<StageHeads> {
                    let ws = w
                        .series
                        .iter()
                        .find(|x| x.label == s.label)
                        .with_context(|| format!("no locality scores for `{}`", s.label))?;
                    Ok(StageHeads {
                        name: s.label.clone(),
                        association: s.y.clone(),
                        window_locality: ws.y.clone(),
                    })
                })
                .collect::<Result<_>>()?;
            Ok(Some(head_score_heatmaps(
                &stages,
                layers,
                heads,
                (uni(a), uni(w)),
                seeds,
            )?))
        }
        "lego/shortcuts" if lines && charts.len() == 2 => {
            let n = charts[1]
                .series
                .iter()
                .map(|s| s.x.len())
                .max()
                .unwrap_or(0);
            Ok(Some(vec![
                grouped_bars(&charts[0], variants.to_vec(), "test variant", seeds),
                grouped_bars(
                    &charts[1],
                    (1..=n).map(|k| k.to_string()).collect(),
                    &charts[1].x_label,
                    seeds,
                ),
            ]))
        }
        _ => Ok(None),
    }
}

fn shortcuts(ctx: &FigureContext) -> Result<FigureOutput> {
    let (exp, r) = results(ctx)?;
    let variants = exp
        .shortcuts
        .as_ref()
        .map(|s| s.test_variants.clone())
        .unwrap_or_default();
    let names: Vec<String> = variants.iter().map(|v| v.name().to_string()).collect();
    let x: Vec<f64> = (1..=variants.len()).map(|i| i as f64).collect();
    let mut rob = Chart {
        title: "accuracy per test variant, all positions".into(),
        x_label: "test variant".into(),
        y_label: "test accuracy".into(),
        legend: Corner::UpperLeft,
        ..Default::default()
    };
    let mut summary = serde_json::Map::new();
    for (i, l) in labels(&r.results).iter().enumerate() {
        let xs = of_label(&r.results, l);
        let per_seed: Vec<Vec<f64>> = xs
            .iter()
            .map(|run| {
                variants
                    .iter()
                    .map(|v| {
                        run.variant_accuracy
                            .iter()
                            .find(|a| a.0 == *v)
                            .map(|a| mean(&a.1))
                            .unwrap_or(f64::NAN)
                    })
                    .collect()
            })
            .collect();
        let s = Series::over_runs(l.clone(), Mark::LinePoints, color(i), x.clone(), &per_seed);
        summary.insert(
            l.clone(),
            serde_json::Value::Object(
                variants
                    .iter()
                    .zip(&s.y)
                    .map(|(v, a)| (v.name().to_string(), json!(round3(*a))))
                    .collect(),
            ),
        );
        rob.series.push(s);
    }
    rob.series.push(Series::hline(
        "chance",
        GREY,
        0.5,
        1.0,
        variants.len().max(1) as f64,
    ));
    // per position on shuffled test sentences (the official task)
    let shuffled: Vec<RunResult> = r
        .results
        .iter()
        .map(|x| {
            let mut y = x.clone();
            if let Some(a) = x.variant_accuracy.iter().find(|a| a.0 == Variant::Shuffled) {
                y.per_position = a.1.clone();
            }
            y
        })
        .collect();
    let pp = per_position_chart(
        "per position, shuffled test sentences",
        &shuffled,
        r.train_vars,
        &|l| l.to_string(),
    );
    let seeds = labels(&r.results)
        .iter()
        .map(|l| of_label(&r.results, l).len())
        .max()
        .unwrap_or(0);
    let positions = pp.series.iter().map(|s| s.x.len()).max().unwrap_or(0);
    let charts = vec![
        grouped_bars(&rob, names, "test variant", seeds),
        grouped_bars(
            &pp,
            (1..=positions).map(|k| k.to_string()).collect(),
            &pp.x_label,
            seeds,
        ),
    ];
    Ok(FigureOutput {
        charts,
        summary: serde_json::Value::Object(summary),
    })
}

fn attention_flops(ctx: &FigureContext) -> Result<FigureOutput> {
    let (_, r) = results(ctx)?;
    let tv = r.train_vars;
    let mut acc = Chart {
        title: "accuracy vs forward FLOPs".into(),
        x_label: "forward FLOPs per sentence (millions)".into(),
        y_label: format!("test accuracy, positions 1-{tv}"),
        legend: Corner::LowerRight,
        ..Default::default()
    };
    let base = r
        .results
        .first()
        .map(|x| x.forward_flops as f64)
        .unwrap_or(1.0);
    let mut summary = serde_json::Map::new();
    for (i, l) in labels(&r.results).iter().enumerate() {
        let xs = of_label(&r.results, l);
        let f = xs[0].forward_flops as f64;
        let sup: Vec<f64> = xs
            .iter()
            .map(|x| mean(&x.per_position[..tv.min(x.per_position.len())]))
            .collect();
        let ext: Vec<f64> = xs
            .iter()
            .map(|x| mean(&x.per_position[tv.min(x.per_position.len())..]))
            .collect();
        let saving = 100.0 * (1.0 - f / base);
        let name = if saving.abs() < 0.05 {
            format!("{l} (all heads learned)")
        } else {
            format!("{l} (-{saving:.1}% FLOPs)")
        };
        let mut s = Series::new(
            name,
            Mark::Points,
            color(i),
            vec![f / 1e6],
            vec![mean(&sup)],
        );
        s.band = Some((
            vec![sup.iter().copied().fold(f64::INFINITY, f64::min)],
            vec![sup.iter().copied().fold(f64::NEG_INFINITY, f64::max)],
        ));
        acc.series.push(s);
        summary.insert(
            l.clone(),
            json!({
                "forward_flops_per_sentence": xs[0].forward_flops,
                "flop_saving": round3(1.0 - f / base),
                "fixed_local": xs[0].run.fixed_local,
                "fixed_association": xs[0].run.fixed_association,
                "acc_supervised": round3(mean(&sup)),
                "acc_extrapolated": round3(mean(&ext)),
            }),
        );
    }
    // chance as the floor, so the spread between configurations reads at its true scale
    let fx: Vec<f64> = r
        .results
        .iter()
        .map(|x| x.forward_flops as f64 / 1e6)
        .collect();
    let (f0, f1) = (
        fx.iter().copied().fold(f64::INFINITY, f64::min),
        fx.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    );
    acc.series.push(Series::hline("chance", GREY, 0.5, f0, f1));
    let pp = per_position_chart("per chain position", &r.results, tv, &|l| l.to_string());
    Ok(FigureOutput {
        charts: vec![acc, pp],
        summary: serde_json::Value::Object(summary),
    })
}

fn convolution(ctx: &FigureContext) -> Result<FigureOutput> {
    let (exp, r) = results(ctx)?;
    let preset = exp.preset(ctx.preset);
    let conv = preset
        .convolution
        .as_ref()
        .context("a convolution study needs [*.convolution]")?;
    let mut prog = Chart {
        title: "program execution: printed values".into(),
        x_label: "training step".into(),
        y_label: "test accuracy (all prints)".into(),
        legend: Corner::LowerRight,
        ..Default::default()
    };
    let mut summary = serde_json::Map::new();
    let mut majority = Vec::new();
    for (i, c) in conv.configs.iter().enumerate() {
        let xs: Vec<_> = r
            .programs
            .iter()
            .filter(|p| p.run.label == c.label)
            .collect();
        let Some(first) = xs.first() else { continue };
        let x: Vec<f64> = first.curve.iter().map(|p| p.step as f64).collect();
        let per: Vec<Vec<f64>> = xs
            .iter()
            .filter(|p| p.curve.len() == x.len())
            .map(|p| p.curve.iter().map(|q| q.accuracy).collect())
            .collect();
        prog.series.push(Series::over_runs(
            format!("{} ({} params)", c.label, first.params),
            Mark::Line,
            color(i),
            x,
            &per,
        ));
        majority.extend(xs.iter().map(|p| p.majority));
        summary.insert(
            format!("program {}", c.label),
            json!({
                "accuracy": round3(mean(&xs.iter().map(|p| p.accuracy).collect::<Vec<_>>())),
                "per_print": first.per_print.iter().map(|v| round3(*v)).collect::<Vec<_>>(),
                "params": first.params,
                "forward_flops_per_program": first.forward_flops,
                "seeds": xs.len(),
            }),
        );
    }
    if let Some(last) = prog.series.first().and_then(|s| s.x.last().copied()) {
        let m = mean(&majority);
        prog.series
            .push(Series::hline("majority value", GREY, m, 0.0, last));
        summary.insert("program majority baseline".into(), json!(round3(m)));
    }
    let mut charts = vec![prog];
    if !r.results.is_empty() {
        // show the config labels, not the shared run's label
        let name_of = |l: &str| -> String {
            if l == PLAIN_LEGO {
                conv.configs
                    .iter()
                    .find(|c| c.qkv_conv() == 0)
                    .map(|c| c.label.clone())
                    .unwrap_or_else(|| l.to_string())
            } else {
                l.to_string()
            }
        };
        charts.push(per_position_chart(
            "LEGO per chain position",
            &r.results,
            r.train_vars,
            &name_of,
        ));
        for l in labels(&r.results) {
            let xs = of_label(&r.results, &l);
            let n = xs[0].per_position.len();
            let v: Vec<f64> = (0..n)
                .map(|k| {
                    round3(mean(
                        &xs.iter().map(|x| x.per_position[k]).collect::<Vec<_>>(),
                    ))
                })
                .collect();
            summary.insert(
                format!("lego {}", name_of(&l)),
                json!({ "per_position_mean": v, "forward_flops_per_sentence": xs[0].forward_flops }),
            );
        }
    }
    Ok(FigureOutput {
        charts,
        summary: serde_json::Value::Object(summary),
    })
}
