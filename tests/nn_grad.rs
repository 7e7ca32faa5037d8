//! Gradients of the fused kernels and of every block option against central finite differences
//! in f64.

use attnlab::nn::{
    self, ops, Activation, AttnMask, ForwardOpts, NormPlacement, Positions, Transformer,
    TransformerConfig,
};
use candle_core::{DType, Device, Tensor, Var};
use rand::Rng as _;

const H: f64 = 1e-5;

fn randn(shape: &[usize], seed: u64) -> Tensor {
    let mut r = attnlab::rng::seeded(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| r.gen::<f64>() * 2.0 - 1.0).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn close(analytic: f64, numeric: f64, what: &str) {
    let tol = 1e-7 + 1e-6 * numeric.abs();
    assert!(
        (analytic - numeric).abs() <= tol,
        "{what}: analytic {analytic} vs finite difference {numeric}"
    );
}

/// Checks d f / d x for every entry of x.
fn check_op(name: &str, x0: &Tensor, f: impl Fn(&Tensor) -> Tensor) {
    let x = Var::from_tensor(x0).unwrap();
    let w = randn(f(x0).dims(), 99);
    let loss = |t: &Tensor| f(t).mul(&w).unwrap().sum_all().unwrap();
    let g = loss(x.as_tensor()).backward().unwrap();
    let ga = g
        .get(x.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let base = x0.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    for i in 0..base.len() {
        let eval = |d: f64| {
            let mut v = base.clone();
            v[i] += d;
            let t = Tensor::from_vec(v, x0.shape(), &Device::Cpu).unwrap();
            loss(&t).to_scalar::<f64>().unwrap()
        };
        close(
            ga[i],
            (eval(H) - eval(-H)) / (2.0 * H),
            &format!("{name}[{i}]"),
        );
    }
}

#[test]
fn fused_kernels_match_finite_differences() {
    let x = randn(&[3, 5], 1);
    check_op("softmax", &x, |t| ops::softmax_last_dim(t).unwrap());
    check_op("log_softmax", &x, |t| ops::log_softmax_last_dim(t).unwrap());
    check_op("gelu", &(x.clone() * 3.0).unwrap(), |t| {
        ops::gelu_erf(t).unwrap()
    });
    let g = (randn(&[5], 2) + 1.0).unwrap();
    let b = randn(&[5], 3);
    check_op("layer_norm.x", &x, |t| {
        ops::layer_norm(t, &g, &b, 1e-5).unwrap()
    });
    check_op("layer_norm.gamma", &g, |t| {
        ops::layer_norm(&x, t, &b, 1e-5).unwrap()
    });
    check_op("layer_norm.beta", &b, |t| {
        ops::layer_norm(&x, &g, t, 1e-5).unwrap()
    });
    // The fused forward passes equal the composed definitions.
    let sm = candle_nn::ops::softmax(&x, 1).unwrap();
    let d = (ops::softmax_last_dim(&x).unwrap() - sm)
        .unwrap()
        .abs()
        .unwrap();
    assert!(d.max_all().unwrap().to_scalar::<f64>().unwrap() < 1e-15);
}

fn base() -> TransformerConfig {
    TransformerConfig {
        vocab_size: 5,
        max_len: 6,
        d_model: 8,
        n_layers: 2,
        n_heads: 2,
        d_ff: 12,
        ..Default::default()
    }
}

/// Loss of one batch with every option the config needs; deterministic (dropout masks come from
/// a clone of one generator each call).
fn model_loss(model: &Transformer, cfg: &TransformerConfig) -> Tensor {
    let (b, t) = (2, 5);
    let mut r = attnlab::rng::seeded(7);
    let toks: Vec<u32> = (0..b * t)
        .map(|_| r.gen_range(0..cfg.vocab_size as u32))
        .collect();
    let tgts: Vec<u32> = (0..b * t)
        .map(|_| r.gen_range(0..cfg.out() as u32))
        .collect();
    let tokens = Tensor::from_vec(toks, (b, t), &Device::Cpu).unwrap();
    let targets = Tensor::from_vec(tgts, (b, t), &Device::Cpu).unwrap();
    let patterns = if cfg.fixed_heads > 0 {
        let p = randn(&[b, cfg.fixed_heads, t, t], 8).abs().unwrap();
        Some(p.broadcast_div(&p.sum_keepdim(3).unwrap()).unwrap())
    } else {
        None
    };
    // Per-example boolean mask: example 1 may not attend to its last key.
    let mut allowed = vec![1u8; b * t * t];
    for q in 0..t {
        allowed[t * t + q * t + (t - 1)] = 0;
    }
    let mask = AttnMask::Allowed(Tensor::from_vec(allowed, (b, t, t), &Device::Cpu).unwrap());
    let mut drng = attnlab::rng::seeded(11);
    let out = model
        .forward_with(
            &tokens,
            ForwardOpts {
                mask: Some(&mask),
                patterns: patterns.as_ref(),
                capture_attention: false,
                dropout_rng: (cfg.dropout > 0.0).then_some(&mut drng),
            },
        )
        .unwrap();
    nn::cross_entropy(&out.logits, &targets, None).unwrap()
}

fn check_model(name: &str, cfg: TransformerConfig) {
    let (model, vm) = Transformer::build(&cfg, 3, DType::F64, &Device::Cpu).unwrap();
    // Larger init so every path carries signal.
    for v in vm.all_vars() {
        let t = v.as_tensor();
        if t.rank() >= 2 && !t.dims().iter().any(|&d| d == cfg.qkv_conv) {
            v.set(&(t * 15.0).unwrap()).unwrap();
        }
    }
    let grads = model_loss(&model, &cfg).backward().unwrap();
    let data = vm.data().lock().unwrap();
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    let mut checked = 0;
    for n in names {
        let var = &data[n];
        let ga = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no gradient for `{n}`"))
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let base = var.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        // A few entries spread over each tensor.
        let step = (base.len() / 4).max(1);
        for i in (0..base.len()).step_by(step) {
            let eval = |d: f64| {
                let mut v = base.clone();
                v[i] += d;
                var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap())
                    .unwrap();
                model_loss(&model, &cfg).to_scalar::<f64>().unwrap()
            };
            let num = (eval(H) - eval(-H)) / (2.0 * H);
            var.set(&Tensor::from_vec(base.clone(), var.shape(), &Device::Cpu).unwrap())
                .unwrap();
            close(ga[i], num, &format!("{name}: d loss / d {n}[{i}]"));
            checked += 1;
        }
    }
    assert!(checked > 20, "{name}: only {checked} entries checked");
}

#[test]
fn every_option_matches_finite_differences() {
    let cases: Vec<(&str, TransformerConfig)> = vec![
        ("encoder pre-LN learned untied", base()),
        (
            "decoder post-LN sinusoidal tied relu",
            TransformerConfig {
                causal: true,
                norm: NormPlacement::Post,
                positions: Positions::Sinusoidal,
                tie_embeddings: true,
                activation: Activation::Relu,
                ..base()
            },
        ),
        (
            "shared layers, no positions, n_out",
            TransformerConfig {
                share_layers: true,
                n_layers: 3,
                positions: Positions::None,
                n_out: 3,
                ..base()
            },
        ),
        (
            "fixed-pattern head",
            TransformerConfig {
                fixed_heads: 1,
                ..base()
            },
        ),
        (
            "all heads fixed",
            TransformerConfig {
                fixed_heads: 2,
                n_layers: 1,
                ..base()
            },
        ),
        (
            "causal qkv conv",
            TransformerConfig {
                causal: true,
                qkv_conv: 3,
                ..base()
            },
        ),
        (
            "centred qkv conv post-LN",
            TransformerConfig {
                qkv_conv: 2,
                norm: NormPlacement::Post,
                ..base()
            },
        ),
        (
            "dropout",
            TransformerConfig {
                dropout: 0.2,
                ..base()
            },
        ),
    ];
    for (name, cfg) in cases {
        check_model(name, cfg);
    }
}
