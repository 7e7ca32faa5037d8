//! The fused kernels (linear, attention core, whole block) against the composed candle ops they
//! replace: same logits, same captured attention, same gradients (f64). Its own test binary
//! because the switch is process-wide.

mod common;

use attnlab::nn::fused_block;
use attnlab::nn::{Activation, NormPlacement, TransformerConfig};

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
