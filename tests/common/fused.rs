//! The fused kernels against the composed candle ops they replace, for the fused-kernel test
//! binaries (each its own process: the fused switch and the GEMM choice are process-wide).

use attnlab::nn::{self, fused, AttnMask, ForwardOpts, Transformer, TransformerConfig};
use candle_core::{DType, Device, Tensor};
use rand::Rng as _;

/// Largest absolute entry of an f64 tensor.
pub fn max_abs(t: &Tensor) -> f64 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// Same logits, captured attention and gradients (f64) from the fused and the composed paths,
/// on `b` sentences of `t` tokens.
pub fn fused_and_composed_agree(cfg: &TransformerConfig, b: usize, t: usize) {
    let v = cfg.vocab_size as u32;
    let (m, vm) = Transformer::build(cfg, 4, DType::F64, &Device::Cpu).unwrap();
    let mut r = attnlab::rng::seeded(3);
    // Biases start at zero and LayerNorm at identity: move every parameter so that a kernel
    // dropping a bias or mis-scaling a product cannot agree by accident.
    for var in vm.all_vars() {
        let t = var.as_tensor();
        let noise: Vec<f64> = (0..t.elem_count())
            .map(|_| r.gen_range(-0.1..0.1))
            .collect();
        let noise = Tensor::from_vec(noise, t.shape(), &Device::Cpu).unwrap();
        var.set(&(t + noise).unwrap()).unwrap();
    }
    let toks: Vec<u32> = (0..b * t).map(|_| r.gen_range(0..v)).collect();
    let toks = Tensor::from_vec(toks, (b, t), &Device::Cpu).unwrap();
    let allowed: Vec<u8> = (0..b * t * t).map(|i| (i % 5 != 1) as u8).collect();
    let mask = AttnMask::Allowed(Tensor::from_vec(allowed, (b, t, t), &Device::Cpu).unwrap());
    // Fixed head k attends from each position to the one k places on (wrapping).
    let nf = cfg.fixed_heads;
    let pat = (nf > 0).then(|| {
        let v: Vec<f64> = (0..b * nf * t * t)
            .map(|i| {
                let (k, q, key) = ((i / (t * t)) % nf, (i / t) % t, i % t);
                (key == (q + k) % t) as u8 as f64
            })
            .collect();
        Tensor::from_vec(v, (b, nf, t, t), &Device::Cpu).unwrap()
    });
    let run = |on: bool| {
        fused::set_enabled(on);
        let out = m
            .forward_with(
                &toks,
                ForwardOpts {
                    mask: Some(&mask),
                    patterns: pat.as_ref(),
                    capture_attention: true,
                    dropout_rng: None,
                },
            )
            .unwrap();
        let loss = nn::cross_entropy(&out.logits, &toks, None).unwrap();
        let grads = loss.backward().unwrap();
        let g: Vec<Tensor> = vm
            .all_vars()
            .iter()
            .map(|v| grads.get(v.as_tensor()).unwrap().clone())
            .collect();
        (out.logits, out.attention, g)
    };
    let (l1, a1, g1) = run(true);
    let (l0, a0, g0) = run(false);
    assert!(max_abs(&(l1 - l0).unwrap()) < 1e-12);
    for (x, y) in a1.iter().zip(&a0) {
        assert!(max_abs(&(x - y).unwrap()) < 1e-12);
    }
    for (x, y) in g1.iter().zip(&g0) {
        let scale = max_abs(y).max(1e-3);
        assert!(
            max_abs(&(x - y).unwrap()) < 1e-10 * scale,
            "gradient differs"
        );
    }
    assert_eq!(g1.len(), vm.all_vars().len());
}
