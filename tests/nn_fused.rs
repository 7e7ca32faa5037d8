//! The fused linear / attention kernels against the composed candle ops they replace: same
//! logits, same captured attention, same gradients (f64). Its own test binary because the switch
//! is process-wide.

mod common;

use attnlab::nn::TransformerConfig;

#[test]
fn fused_and_composed_paths_agree() {
    let cfgs = [
        TransformerConfig {
            vocab_size: 6,
            max_len: 7,
            d_model: 12,
            n_heads: 3,
            n_layers: 2,
            ..Default::default()
        },
        TransformerConfig {
            vocab_size: 6,
            max_len: 7,
            d_model: 12,
            n_heads: 3,
            n_layers: 2,
            causal: true,
            fixed_heads: 1,
            qkv_conv: 2,
            ..Default::default()
        },
    ];
    for cfg in cfgs {
        common::fused::fused_and_composed_agree(&cfg, 3, 7);
    }
}
