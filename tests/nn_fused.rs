//! The fused kernels (linear, attention core, whole block) against the composed candle ops they
//! replace: same logits, same captured attention, same gradients (f64). Its own test binary
//! because the switch is process-wide.

mod common;

use attnlab::nn::fused_block;
use attnlab::nn::{Activation, NormPlacement, TransformerConfig};

/// The fused switch and the fused-block counter are process-wide: the tests take turns.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn small() -> TransformerConfig {
    TransformerConfig {
        vocab_size: 6,
        max_len: 7,
        d_model: 12,
        n_heads: 3,
        n_layers: 2,
        ..Default::default()
    }
}

#[test]
fn fused_and_composed_paths_agree() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // (config, whether its blocks run as one fused node)
    let cfgs = [
        (small(), true),
        (
            TransformerConfig {
                causal: true,
                fixed_heads: 1,
                qkv_conv: 2,
                ..small()
            },
            false,
        ),
        (
            TransformerConfig {
                causal: true,
                norm: NormPlacement::Post,
                activation: Activation::Relu,
                tie_embeddings: true,
                ..small()
            },
            true,
        ),
        (
            TransformerConfig {
                fixed_heads: 1,
                share_layers: true,
                n_layers: 3,
                ..small()
            },
            true,
        ),
        (
            TransformerConfig {
                fixed_heads: 3,
                norm: NormPlacement::Post,
                ..small()
            },
            true,
        ),
    ];
    for (cfg, whole_block) in cfgs {
        let before = fused_block::calls();
        common::fused::fused_and_composed_agree(&cfg, 3, 7);
        assert_eq!(
            fused_block::calls() > before,
            whole_block,
            "fused block use differs from expected for {cfg:?}"
        );
    }
}

/// The training precision: the f32 block (AVX GELU, fast `exp`, OpenBLAS where chosen) against
/// the composed f32 ops, above the sizes where the kernels split work across threads.
#[test]
fn fused_block_in_f32_agrees_with_composed_ops() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    use attnlab::nn::{self, fused, Transformer};
    use candle_core::{DType, Device, Tensor};
    use rand::Rng as _;
    let cfg = TransformerConfig {
        vocab_size: 11,
        max_len: 20,
        d_model: 32,
        n_heads: 4,
        n_layers: 2,
        causal: true,
        ..Default::default()
    };
    let (b, t) = (24, 20);
    let (m, vm) = Transformer::build(&cfg, 5, DType::F32, &Device::Cpu).unwrap();
    let mut r = attnlab::rng::seeded(9);
    for var in vm.all_vars() {
        let x = var.as_tensor();
        let noise: Vec<f32> = (0..x.elem_count())
            .map(|_| r.gen_range(-0.1..0.1))
            .collect();
        let noise = Tensor::from_vec(noise, x.shape(), &Device::Cpu).unwrap();
        var.set(&(x + noise).unwrap()).unwrap();
    }
    let toks: Vec<u32> = (0..b * t).map(|_| r.gen_range(0..11)).collect();
    let toks = Tensor::from_vec(toks, (b, t), &Device::Cpu).unwrap();
    let run = |on: bool| {
        fused::set_enabled(on);
        let logits = m.forward(&toks).unwrap();
        let grads = nn::cross_entropy(&logits, &toks, None)
            .unwrap()
            .backward()
            .unwrap();
        let g: Vec<Tensor> = vm
            .all_vars()
            .iter()
            .map(|v| {
                grads
                    .get(v.as_tensor())
                    .unwrap()
                    .to_dtype(DType::F64)
                    .unwrap()
            })
            .collect();
        (logits.to_dtype(DType::F64).unwrap(), g)
    };
    let before = fused_block::calls();
    let (l1, g1) = run(true);
    assert!(
        fused_block::calls() > before,
        "the f32 model did not take the fused block"
    );
    let (l0, g0) = run(false);
    let max_abs = common::fused::max_abs;
    assert!(max_abs(&(&l1 - &l0).unwrap()) < 1e-4 * max_abs(&l0).max(1.0));
    for (x, y) in g1.iter().zip(&g0) {
        let scale = max_abs(y).max(1e-3);
        let diff = max_abs(&(x - y).unwrap());
        assert!(
            diff < 1e-3 * scale,
            "f32 gradient differs by {diff} (scale {scale})"
        );
    }
}
