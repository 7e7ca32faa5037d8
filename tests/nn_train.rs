//! Training: optimiser updates against hand computations, schedules, clipping, overfitting a
//! tiny dataset, and checkpoint save / drop / resume reproducing losses bit for bit.

use attnlab::nn::{self, ForwardOpts, Transformer, TransformerConfig};
use attnlab::rng::Rng;
use attnlab::run::State;
use attnlab::train::{
    backward_step, schedule::ScheduleKind, OptimConfig, OptimKind, Optimizer, Schedule,
};
use candle_core::{DType, Device, Tensor};
use candle_nn::{Init, VarMap};
use rand::Rng as _;

fn one_param(v: &[f64]) -> (VarMap, Tensor) {
    let vm = VarMap::new();
    let vb = candle_nn::VarBuilder::from_varmap(&vm, DType::F64, &Device::Cpu);
    let w = vb
        .get_with_hints((1, v.len()), "w", Init::Const(0.0))
        .unwrap();
    vm.data().lock().unwrap()["w"]
        .set(&Tensor::from_slice(v, (1, v.len()), &Device::Cpu).unwrap())
        .unwrap();
    (vm, w)
}

fn value(vm: &VarMap) -> Vec<f64> {
    vm.data().lock().unwrap()["w"]
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

#[test]
fn optimisers_match_hand_computed_updates() {
    // loss = sum(w^2 * c) with c = (1, 3): grad = 2 c w.
    let c = Tensor::new(&[[1.0f64, 3.0]], &Device::Cpu).unwrap();
    let run = |cfg: OptimConfig, steps: usize| {
        let (vm, w) = one_param(&[1.0, -2.0]);
        let mut opt = Optimizer::new(cfg, &vm).unwrap();
        for _ in 0..steps {
            let loss = w.sqr().unwrap().mul(&c).unwrap().sum_all().unwrap();
            backward_step(&loss, &mut opt).unwrap();
        }
        value(&vm)
    };
    let base = OptimConfig {
        lr: 0.1,
        weight_decay: 0.5,
        ..Default::default()
    };
    // AdamW, first step: m/(1-b1) = g, v/(1-b2) = g^2, so w -= lr * sign(g), after decay.
    let w = run(base.clone(), 1);
    let exp = [1.0 * (1.0 - 0.05) - 0.1, -2.0 * (1.0 - 0.05) + 0.1];
    for i in 0..2 {
        assert!((w[i] - exp[i]).abs() < 1e-9, "adamw {w:?} vs {exp:?}");
    }
    // Adam: L2 decay enters the gradient, first step still moves by lr * sign.
    let w = run(
        OptimConfig {
            kind: OptimKind::Adam,
            ..base.clone()
        },
        1,
    );
    assert!(
        (w[0] - 0.9).abs() < 1e-9 && (w[1] + 1.9).abs() < 1e-9,
        "{w:?}"
    );
    // SGD with momentum 0.9, two steps by hand (decay 0.5 as L2).
    let w = run(
        OptimConfig {
            kind: OptimKind::Sgd,
            momentum: 0.9,
            ..base.clone()
        },
        2,
    );
    let mut exp = [1.0f64, -2.0];
    let cs = [1.0, 3.0];
    let mut buf = [0.0f64; 2];
    for s in 0..2 {
        for i in 0..2 {
            let g = 2.0 * cs[i] * exp[i] + 0.5 * exp[i];
            buf[i] = if s == 0 { g } else { 0.9 * buf[i] + g };
            exp[i] -= 0.1 * buf[i];
        }
    }
    for i in 0..2 {
        assert!((w[i] - exp[i]).abs() < 1e-12, "sgd {w:?} vs {exp:?}");
    }
    // Clipping: grad (2, -12) has norm sqrt(148); SGD without decay moves by lr * clipped grad.
    let w = run(
        OptimConfig {
            kind: OptimKind::Sgd,
            weight_decay: 0.0,
            clip_norm: 1.0,
            ..base
        },
        1,
    );
    let n = 148f64.sqrt() + 1e-6;
    assert!((w[0] - (1.0 - 0.1 * 2.0 / n)).abs() < 1e-12, "{w:?}");
    assert!((w[1] - (-2.0 + 0.1 * 12.0 / n)).abs() < 1e-12, "{w:?}");
}

#[test]
fn schedules_have_their_shapes() {
    let s = |kind| Schedule {
        kind,
        warmup_steps: 10,
        total_steps: 110,
        final_ratio: 0.1,
    };
    let lin = s(ScheduleKind::Linear);
    assert_eq!(lin.factor(0), 0.1);
    assert_eq!(lin.factor(9), 1.0);
    assert!((lin.factor(60) - 0.55).abs() < 1e-12);
    assert!((lin.factor(500) - 0.1).abs() < 1e-12);
    let cos = s(ScheduleKind::Cosine);
    assert!((cos.factor(60) - 0.55).abs() < 1e-12);
    assert!(
        (cos.factor(35) - (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI / 4.0).cos()))).abs()
            < 1e-12
    );
    assert!((cos.factor(110) - 0.1).abs() < 1e-12);
    assert_eq!(s(ScheduleKind::Constant).factor(1000), 1.0);
    let bad = Schedule {
        total_steps: 5,
        ..lin
    };
    assert!(bad
        .validate()
        .unwrap_err()
        .to_string()
        .contains("total_steps"));
}

fn tiny_data(seed: u64) -> (Tensor, Tensor) {
    // Target at position i: the token at position (i + 1) mod T (needs attention).
    let mut r = attnlab::rng::seeded(seed);
    let (n, t) = (16, 6);
    let x: Vec<u32> = (0..n * t).map(|_| r.gen_range(0..6)).collect();
    let y: Vec<u32> = (0..n * t)
        .map(|i| x[(i / t) * t + (i % t + 1) % t])
        .collect();
    (
        Tensor::from_vec(x, (n, t), &Device::Cpu).unwrap(),
        Tensor::from_vec(y, (n, t), &Device::Cpu).unwrap(),
    )
}

fn tiny_cfg() -> TransformerConfig {
    TransformerConfig {
        vocab_size: 6,
        max_len: 6,
        d_model: 32,
        n_layers: 2,
        n_heads: 2,
        ..Default::default()
    }
}

#[test]
fn tiny_model_overfits_tiny_dataset() {
    let cfg = tiny_cfg();
    let (m, vm) = Transformer::build(&cfg, 0, DType::F32, &Device::Cpu).unwrap();
    let mut opt = Optimizer::new(
        OptimConfig {
            lr: 3e-3,
            schedule: Schedule {
                kind: ScheduleKind::Linear,
                warmup_steps: 20,
                total_steps: 400,
                final_ratio: 0.1,
            },
            clip_norm: 1.0,
            ..Default::default()
        },
        &vm,
    )
    .unwrap();
    let (x, y) = tiny_data(1);
    let first = nn::cross_entropy(&m.forward(&x).unwrap(), &y, None)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    for _ in 0..400 {
        let loss = nn::cross_entropy(&m.forward(&x).unwrap(), &y, None).unwrap();
        backward_step(&loss, &mut opt).unwrap();
    }
    let logits = m.forward(&x).unwrap();
    let loss = nn::cross_entropy(&logits, &y, None)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(first > 1.5, "initial loss {first}");
    assert!(loss < 0.05, "final loss {loss}");
    assert_eq!(nn::accuracy(&logits, &y, None).unwrap(), 1.0);
}

/// Trains `steps` more steps with dropout and fresh data each step, returning the losses.
fn train(
    m: &Transformer,
    opt: &mut Optimizer,
    data_rng: &mut attnlab::rng::Rng,
    drop_rng: &mut attnlab::rng::Rng,
    steps: usize,
) -> Vec<f32> {
    (0..steps)
        .map(|_| {
            let (x, y) = tiny_data(data_rng.gen());
            let out = m
                .forward_with(
                    &x,
                    ForwardOpts {
                        dropout_rng: Some(drop_rng),
                        ..Default::default()
                    },
                )
                .unwrap();
            let loss = nn::cross_entropy(&out.logits, &y, None).unwrap();
            backward_step(&loss, opt).unwrap();
            loss.to_scalar::<f32>().unwrap()
        })
        .collect()
}

#[test]
fn save_drop_resume_gives_identical_losses() {
    let cfg = TransformerConfig {
        dropout: 0.1,
        ..tiny_cfg()
    };
    let ocfg = OptimConfig {
        schedule: Schedule {
            kind: ScheduleKind::Cosine,
            warmup_steps: 3,
            total_steps: 12,
            final_ratio: 0.0,
        },
        clip_norm: 0.5,
        ..Default::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("run/ckpt.safetensors");

    let (m, vm) = Transformer::build(&cfg, 9, DType::F32, &Device::Cpu).unwrap();
    let mut opt = Optimizer::new(ocfg.clone(), &vm).unwrap();
    let (mut dr, mut pr) = (attnlab::rng::seeded(1), attnlab::rng::seeded(2));
    let mut straight = train(&m, &mut opt, &mut dr, &mut pr, 5);
    let save = |vm: &VarMap, opt: &Optimizer, dr: &Rng, pr: &Rng| {
        let mut st = State::new();
        st.put_varmap("param", vm).unwrap();
        st.put_optimizer("optim", opt).unwrap();
        st.put_rng("data", dr);
        st.put_rng("dropout", pr);
        st.put_json("k", &1).unwrap();
        st.write(&ck).unwrap();
    };
    save(&vm, &opt, &dr, &pr);
    straight.extend(train(&m, &mut opt, &mut dr, &mut pr, 7));
    drop((m, vm, opt));

    // A new process: different seed, then everything restored from the checkpoint.
    let (m, vm) = Transformer::build(&cfg, 1234, DType::F32, &Device::Cpu).unwrap();
    let mut opt = Optimizer::new(ocfg, &vm).unwrap();
    let st = State::read(&ck).unwrap();
    st.load_varmap("param", &vm).unwrap();
    st.load_optimizer("optim", &mut opt).unwrap();
    assert_eq!((opt.step, st.json::<i32>("k").unwrap()), (5, 1));
    let (mut dr, mut pr) = (st.rng("data").unwrap(), st.rng("dropout").unwrap());
    let resumed = train(&m, &mut opt, &mut dr, &mut pr, 7);
    assert_eq!(resumed, straight[5..].to_vec());
    assert!(straight.windows(2).any(|w| w[0] != w[1]));
    // No temp files are left beside the checkpoint.
    let n = std::fs::read_dir(ck.parent().unwrap()).unwrap().count();
    assert_eq!(n, 1);
    // A checkpoint for another model is refused with a message saying so.
    let (_, vm2) = Transformer::build(
        &TransformerConfig {
            share_layers: true,
            ..cfg
        },
        0,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let e = st.load_varmap("param", &vm2).unwrap_err().to_string();
    assert!(e.contains("another model config"), "{e}");
    let (_, vm3) = Transformer::build(
        &TransformerConfig {
            n_layers: 3,
            ..tiny_cfg()
        },
        0,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let e = st.load_varmap("param", &vm3).unwrap_err().to_string();
    assert!(e.contains("another model config"), "{e}");
}

#[test]
fn weighted_cross_entropy_counts_only_weighted_positions() {
    // Two positions: logits favour class 0 at position 0 and class 1 at position 1.
    let logits = Tensor::new(&[[[2.0f64, 0.0], [0.0, 3.0]]], &Device::Cpu).unwrap();
    let targets = Tensor::new(&[[0u32, 0]], &Device::Cpu).unwrap();
    let w = Tensor::new(&[[1.0f64, 0.0]], &Device::Cpu).unwrap();
    let l = nn::cross_entropy(&logits, &targets, Some(&w))
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    let expect = -(2f64.exp() / (2f64.exp() + 1.0)).ln();
    assert!((l - expect).abs() < 1e-12, "{l} vs {expect}");
    let zero = Tensor::zeros((1, 2), DType::F64, &Device::Cpu).unwrap();
    let e = nn::cross_entropy(&logits, &targets, Some(&zero))
        .unwrap_err()
        .to_string();
    assert!(e.contains("weights"), "{e}");
    assert_eq!(nn::accuracy(&logits, &targets, Some(&w)).unwrap(), 1.0);
    assert_eq!(nn::accuracy(&logits, &targets, None).unwrap(), 0.5);
}
